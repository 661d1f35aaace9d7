"""The operator console (web pages over the running stack); see app.py."""

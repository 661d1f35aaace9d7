from services.console.app import create_app
from shared.service import serve_http

serve_http(create_app)

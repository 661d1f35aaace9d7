from services.wallet.app import create_app
from shared.service import serve

serve(create_app)

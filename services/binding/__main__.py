from services.binding.app import create_app
from shared.service import serve

serve(create_app)

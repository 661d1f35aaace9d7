from services.gateway.app import serve

serve()

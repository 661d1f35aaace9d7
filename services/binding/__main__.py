import asyncio

from services.binding.app import main

asyncio.run(main())

import asyncio

from services.settlement.app import main

asyncio.run(main())

import asyncio

from services.wallet.app import main

asyncio.run(main())

"""``python -m instructray.api``: serve the job service with uvicorn."""

from instructray.api.app import main

main()

from opsconductor_platform.cli import app

app()

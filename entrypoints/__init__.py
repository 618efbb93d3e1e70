"""How the world reaches the service: the Litestar app, the CLI, and the container wiring them."""

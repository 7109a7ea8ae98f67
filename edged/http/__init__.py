"""The HTTP shells of the node: one module per route group, the shared middleware,
error rendering and the server runner."""

"""Built-in plugins: the default stages, registered through the same hooks as any plugin."""

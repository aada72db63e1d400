"""HTTP routes, each module a built-in plugin implementing ``register_routes``."""

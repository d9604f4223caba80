"""The one place that builds SSLContexts, makes and inspects certificates."""

"""The HTTP edge: the app, its authentication, the connection protocol, the server and its
workers."""

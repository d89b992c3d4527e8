"""What coordinates one node: connection registry, presence, config cache, routing of bus events,
command sweep, drain."""

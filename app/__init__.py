"""The application layer: entry points only (the chronos-flows CLI, the HTTP server of serve).

Parse, call, print or respond, exit codes; everything else lives in flows/, tasks/, blocks/ and
the domain package chronos_flows/, none of which imports this package."""

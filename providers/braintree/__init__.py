"""Braintree provider: adapter (official ``braintree`` SDK, run in a thread pool) and
an XML-gateway simulator the unmodified SDK talks to."""

"""Adyen Checkout provider: adapter (official SDK in a thread pool), status tables,
error table and a wire-compatible simulator."""

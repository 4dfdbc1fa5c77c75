"""Stripe: adapter (official SDK), status tables, error mapping and simulator."""

"""Test support: a real daemon on loopback with a trustme CA."""

"""`python -m moecloud.cli`: how the gateway starts worker processes (the same app as the `moecloud` script)."""

from moecloud.cli import app

app()

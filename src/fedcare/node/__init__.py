"""The site agent: dials out to the hub, runs approved tasks beside the data, sends updates."""

"""Running without an AWS account: the emulator on loopback."""

"""Pieces of the engine-less image build (`topodra_cli.imagebuild`): Debian packages, wheels, ELF checks, layers."""

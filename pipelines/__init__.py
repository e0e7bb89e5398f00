"""End-to-end workflows users run, and the ``unet-med`` console command."""

"""sonoaudit: audit diffusion-generated breast-ultrasound data.

The shared library every service imports: settings, results store, file store, dataset readers,
message schemas, bus client and the ``sonoaudit`` CLI.
"""

__version__ = "0.1.0"

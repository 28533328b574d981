"""sinder: find and repair the singular defects of Vision Transformers (SINDER, ECCV 2024).

Pipeline: backbones -> theory -> detect -> repair -> export -> report.
"""

__version__ = "0.1.0"

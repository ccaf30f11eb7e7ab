"""VSL: Visual Semantic Loss on SGRAF (ICME 2023): SGR+VSL, SAF+VSL and their mean, SGRAF+VSL."""

from methods.vsl.adapter import VSLAdapter

__all__ = ["VSLAdapter"]

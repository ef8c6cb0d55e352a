"""The two exporter adapters and ``opbridge.export`` on top of them."""

from opbridge.exporters._export import export

__all__ = ["export"]

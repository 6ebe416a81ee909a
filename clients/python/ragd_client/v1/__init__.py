"""Generated gRPC stubs for ragd.v1 (proto/ragd/v1/ragd.proto).

Do not edit: regenerate with ``python proto/generate.py``.
"""

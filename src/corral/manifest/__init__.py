"""corral.manifest"""

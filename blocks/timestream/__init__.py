"""timestream"""

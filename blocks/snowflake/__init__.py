"""snowflake"""

"""Authentication: principals, JWT verification."""

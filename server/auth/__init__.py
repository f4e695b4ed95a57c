"""Authentication: passwords, access tokens, refresh tokens, and the scope authority."""

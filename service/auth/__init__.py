"""OAuth2 client credentials, access tokens, principals, roles and scopes."""

"""Services: the domain logic between thin API routes and the channels/storage below."""

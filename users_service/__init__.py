"""The users service: Tandem's accounts, over gRPC (`users.v1.UsersService`)."""

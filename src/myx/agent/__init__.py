"""The MyX agent daemon."""

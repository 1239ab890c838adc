"""ponder.eval"""

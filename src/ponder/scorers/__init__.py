"""ponder.scorers"""

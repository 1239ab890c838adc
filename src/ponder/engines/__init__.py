"""ponder.engines"""

"""ponder.server"""

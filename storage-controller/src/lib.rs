//! The tidemark storage controller: collections, frontiers, read holds, appends, snapshots, exports and instances over any PersistBackend

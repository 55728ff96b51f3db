-- The bytes of each sealed page, kept with its digest: the Atom document as zstd
-- (level 3), exactly the body served to zstd clients. A sealed page never changes,
-- so it is rendered from its events once, when its digest is recorded, and every
-- later request (after a restart too, and after an upgrade that writes Atom
-- differently) serves these bytes. NULL for pages recorded before this column: they
-- are rendered once more, and kept if they still match their digest.
ALTER TABLE feed_page_digests ADD COLUMN atom_zstd BYTEA;

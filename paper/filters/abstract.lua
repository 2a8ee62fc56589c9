-- The abstract as a section of the body: the first-level section whose identifier is
-- `abstract` ("# Abstract" gets it) moves into the document's `abstract` metadata, where
-- the HTML and typst templates show it. The manuscript computes its abstract in the body,
-- since Quarto evaluates the front matter before any cell runs. Used by Quarto
-- (_quarto.yml: filters) and by analysis/paper.py alike.

local abstract = nil

local function take_abstract(blocks)
  local kept, inside = pandoc.Blocks({}), false
  for _, block in ipairs(blocks) do
    if block.t == "Header" and block.level == 1 then
      inside = block.identifier == "abstract"
      if inside then
        abstract = pandoc.Blocks({})
      else
        kept:insert(block)
      end
    elseif inside then
      abstract:insert(block)
    else
      kept:insert(block)
    end
  end
  return kept
end

return {
  {
    Pandoc = function(doc)
      doc.blocks = take_abstract(doc.blocks)
      if abstract and #abstract > 0 and not doc.meta.abstract then
        doc.meta.abstract = pandoc.MetaBlocks(abstract)
      end
      return doc
    end,
  },
}

-- Results are data. Whatever reaches the document's text, only https links and the
-- document's own images (relative paths inside the build) survive; any other link becomes
-- its text and any other image its description, math is shown as its source text, and raw HTML, TeX or typst is
-- dropped.
-- This backs up report.py's escaping (README: "What happens when"). Used by Quarto
-- (_quarto.yml: filters) and by analysis/paper.py alike.

local function safe_target(target)
  return target:match("^https://") ~= nil or target:match("^#") ~= nil
end

local function own_image(src)
  return src ~= "" and src:match("^%a[%w+.-]*:") == nil and src:sub(1, 1) ~= "/"
    and src:match("%.%.") == nil and src:match("\\") == nil
end

return {
  {
    Link = function(link)
      if not safe_target(link.target) then
        return link.content
      end
    end,
    Image = function(image)
      if not own_image(image.src) then
        return image.caption
      end
    end,
    Math = function(math)  -- the manuscript writes no math; a '$' from a result is a dollar sign
      return pandoc.Str(math.text)
    end,
    RawInline = function()
      return {}
    end,
    RawBlock = function()
      return {}
    end,
  },
}

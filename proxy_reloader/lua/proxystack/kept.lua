-- A shared dict value that a full zone must never lose: the list of names a table is read by.
-- A shared dict frees a key's old value before it allocates a new one of another length, so a
-- write that finds no room (refused by safe_set, or not made room for by set's evictions) loses
-- the old value too. So the value is written to a second key, the one not in use ("NAME@a" or
-- "NAME@b"), and only then is "NAME@" (one letter, overwritten in place) pointed at it, and the
-- older one deleted. A write that finds no room leaves the current value as it was. "NAME"
-- itself is written too, as well as it goes, for an older build of these modules (a proxy
-- rolled back reads its table from the same shared memory after the reload).
local _M = {}

-- The value kept as `name` in `dict`, or nil (a value written before it was kept so: `name` itself).
function _M.get(dict, name)
    local slot = dict:get(name .. "@")
    return dict:get(slot and (name .. "@" .. slot) or name)
end

-- Keep `value` as `name`'s. `safe`: a full zone refuses (safe_set) instead of evicting other keys.
-- true and whether others were evicted (set's `forcible`), or nil and the shared dict's error.
function _M.set(dict, name, value, safe)
    local slot = dict:get(name .. "@")
    local new = slot == "a" and "b" or "a"
    local write = safe and dict.safe_set or dict.set
    local ok, err, forcible = write(dict, name .. "@" .. new, value)
    if not ok then return nil, err end
    ok, err = dict:set(name .. "@", new)
    if not ok then
        dict:delete(name .. "@" .. new)
        return nil, err
    end
    if slot then dict:delete(name .. "@" .. slot) end
    write(dict, name, value)
    return true, forcible
end

return _M

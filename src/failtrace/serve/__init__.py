"""``failtrace serve``: a local web explorer over a results store (FastAPI app in :mod:`.app`, JSON API in
:mod:`.api`, SQL in :mod:`.queries` and :mod:`.casedata`, the front end in ``static/``)."""

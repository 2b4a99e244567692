package fetch

// StreamStep is how many bytes of leaves Stream resolves at a time.
const StreamStep = streamStep

// FetchNowAhead is how many blocks FetchNow has on their way at once.
const FetchNowAhead = fetchNowAhead

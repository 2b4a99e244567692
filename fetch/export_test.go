package fetch

// StreamStep is how many bytes of leaves Stream resolves at a time.
const StreamStep = streamStep

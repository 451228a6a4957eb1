// Issue 4 fills this in: the SendInvoice handler of DESIGN.md with its retry policy.
export const sendInvoiceHandlers = [];

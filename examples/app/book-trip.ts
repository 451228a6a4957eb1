import { defineSaga } from '../../shared/saga/definition.js';

// Issue 3 fills this in: the BookTrip handler and the book-trip saga of DESIGN.md.
export interface TripState {
  tripId: string;
  customerId: string;
  amount: number;
}
export const bookTripSaga = defineSaga<TripState>('book-trip').step('debit-customer', () => {});
export const bookTripHandlers = [];

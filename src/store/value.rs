//! The values that cross the store boundary, in SQLite's value model (null, integer, real,
//! text, blob), which both stores map their columns to: statement parameters (`ToSql`,
//! `params!`) and the columns of rows read (`FromSql`). They are the store's own types, so
//! that code above the store names no driver's; each store converts them to its driver's
//! at the boundary (`sqlite::Bind`, `postgres::Bound`).

/// A value, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A value, borrowed (text as its UTF-8 bytes, as SQLite gives it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    /// The value, owned (text that is not UTF-8 is repaired, as everywhere in rq).
    pub fn to_owned_value(self) -> SqlValue {
        match self {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }

    /// What kind of value it is, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Integer(_) => "integer",
            ValueRef::Real(_) => "real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "blob",
        }
    }
}

impl<'a> From<&'a SqlValue> for ValueRef<'a> {
    fn from(value: &'a SqlValue) -> ValueRef<'a> {
        match value {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// What can be bound as a statement's parameter.
pub trait ToSql {
    fn to_sql(&self) -> ValueRef<'_>;
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_sql(&self) -> ValueRef<'_> {
        (**self).to_sql()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_sql(&self) -> ValueRef<'_> {
        self.as_ref().map_or(ValueRef::Null, ToSql::to_sql)
    }
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::from(self)
    }
}

impl ToSql for ValueRef<'_> {
    fn to_sql(&self) -> ValueRef<'_> {
        *self
    }
}

impl ToSql for str {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_bytes())
    }
}

impl ToSql for String {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_bytes())
    }
}

impl ToSql for [u8] {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToSql for Vec<u8> {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToSql for bool {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Integer(i64::from(*self))
    }
}

impl ToSql for f64 {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

macro_rules! integer_to_sql {
    ($($t:ty)*) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> ValueRef<'_> {
                ValueRef::Integer(i64::from(*self))
            }
        }
    )*};
}
integer_to_sql!(i64 i32 i16 i8 u32 u16 u8);

impl ToSql for usize {
    fn to_sql(&self) -> ValueRef<'_> {
        // Counts and sizes: far below i64::MAX on any 64-bit host.
        ValueRef::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToSql for u64 {
    fn to_sql(&self) -> ValueRef<'_> {
        ValueRef::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

/// Statement parameters: `params![a, b, c]` is a slice of them, as each store binds it.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::ToSql]
    };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::store::ToSql),+] as &[&dyn $crate::store::ToSql]
    };
}

/// Why a column could not be read as asked.
#[derive(Debug, Clone, PartialEq)]
pub enum FromSqlError {
    /// The column holds another kind of value.
    InvalidType,
    /// An integer that does not fit the type asked for.
    OutOfRange(i64),
    /// Text that is not UTF-8.
    NotUtf8,
}

/// What a column can be read as.
pub trait FromSql: Sized {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError>;
}

impl<T: FromSql> FromSql for Option<T> {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::column_result(other).map(Some),
        }
    }
}

impl FromSql for SqlValue {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        Ok(value.to_owned_value())
    }
}

impl FromSql for i64 {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        match value {
            ValueRef::Integer(i) => Ok(i),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

macro_rules! integer_from_sql {
    ($($t:ty)*) => {$(
        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
                let i = i64::column_result(value)?;
                <$t>::try_from(i).map_err(|_| FromSqlError::OutOfRange(i))
            }
        }
    )*};
}
integer_from_sql!(i32 u32 u64 usize u16 u8);

impl FromSql for f64 {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        match value {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Integer(i) => Ok(i as f64),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

impl FromSql for bool {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        i64::column_result(value).map(|i| i != 0)
    }
}

impl FromSql for String {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        match value {
            ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|_| FromSqlError::NotUtf8),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

impl FromSql for Vec<u8> {
    fn column_result(value: ValueRef<'_>) -> std::result::Result<Self, FromSqlError> {
        match value {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_as_sqlite_reads_them() {
        assert_eq!(f64::column_result(ValueRef::Integer(3)), Ok(3.0));
        assert_eq!(
            i64::column_result(ValueRef::Real(3.0)),
            Err(FromSqlError::InvalidType)
        );
        assert_eq!(
            u32::column_result(ValueRef::Integer(-1)),
            Err(FromSqlError::OutOfRange(-1))
        );
        assert_eq!(Option::<i64>::column_result(ValueRef::Null), Ok(None));
        assert_eq!(bool::column_result(ValueRef::Integer(2)), Ok(true));
        assert_eq!(
            String::column_result(ValueRef::Text(b"x")),
            Ok("x".to_string())
        );
    }

    #[test]
    fn parameters_bind_as_values() {
        let none: Option<i64> = None;
        let p = params![1i64, "a", 2.5, true, none, Some(7u32)];
        let values: Vec<ValueRef<'_>> = p.iter().map(|v| v.to_sql()).collect();
        assert_eq!(
            values,
            [
                ValueRef::Integer(1),
                ValueRef::Text(b"a"),
                ValueRef::Real(2.5),
                ValueRef::Integer(1),
                ValueRef::Null,
                ValueRef::Integer(7)
            ]
        );
    }
}
